"""Knowledge distillation machinery: losses.py (pure loss functions), teachers.py (what gives the
targets), objective.py (soft targets, hints and the teacher-output cache, for the training loop).
The ``compress distill`` stage itself is ``compress.stages.distill``."""
