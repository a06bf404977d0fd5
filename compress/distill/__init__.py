"""Knowledge distillation: losses.py (pure loss functions), teachers.py (what gives the targets)
and trainer.py (the ``compress distill`` stage: ``DistillConfig`` and ``distill``)."""
