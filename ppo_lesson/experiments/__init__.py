"""The multi-seed studies behind notebooks 06 and 07, run from the command line:
``python -m ppo_lesson experiments`` (PPO's claims: ``plan``, ``runner``, ``summary``, ``report``, ``figures``)
and ``python -m ppo_lesson compare`` (PPO against the methods that drop its pieces: ``comparison``,
``comparison_report``). Both spread their runs over the worker processes of ``pool``; ``commands``
writes the JSON and figures and prints the reports. The variants and methods themselves are lesson
modules (``ppo_lesson.variants``, ``ppo_lesson.beyond_ppo``, ``ppo_lesson.curves``)."""
