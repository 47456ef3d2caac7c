"""Tasks: the registry (registry.py: TASKS, load_task, a task's answer kind), problems and prompt formats
(base.py), reading files and field mapping (records.py), GSM8K and its programs, SVAMP and MathQA (release.py), the
embedded synthetic task (synthetic.py, synthetic_stories.py).

Imports reftkit.config and reftkit.reward (to check gold answers), nothing above.
"""
