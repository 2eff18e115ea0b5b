# nbgrader's settings on the course hub, for learners and the instructor alike.
# Found through JUPYTER_CONFIG_PATH, which the hub sets for every single-user server
# (hub/qkv_hub.py: user_environment); the values come from the hub's environment.
import os
from pathlib import Path

from autograder.course import nbgrader_config

c = get_config()  # noqa: F821  (injected by traitlets when it loads this file)

course = os.environ.get("QKV_HUB_COURSE")
exchange = os.environ.get("QKV_HUB_EXCHANGE")
if course:
    # The same nbgrader settings the grader uses (source/release folders, gradebook, stubs), so
    # the instructor's generate_assignment writes what `python -m autograder release` writes.
    c.merge(nbgrader_config(Path(course)))
if exchange:
    c.Exchange.root = exchange  # after the merge: the shared exchange, not the grader's private one
c.CourseDirectory.course_id = "qkv"
