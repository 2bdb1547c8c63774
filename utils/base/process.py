"""What the processes of one reproduction share without importing torch: the variable that names
a stage's driver (utils/training/cli.stop_with_parent reads it; repro/ sets it)."""

PARENT_ENV = "NASTY_TEACHER_DRIVER_PID"  # set by reproduce.py (or a SLURM job) for the stages it starts
