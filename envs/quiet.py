"""Silence the two harmless messages the simulators print when a model is loaded."""
import logging
import warnings
from contextlib import contextmanager

import mujoco


@contextmanager
def quiet_model_compile():
    """Drop MuJoCo's "compiler attribute 'settotalmass' is deprecated" warning (half_cheetah.xml
    and dm_control's cheetah.xml use it): otherwise it is printed, appended to a MUJOCO_LOG.TXT
    in the working directory, and logged again by dm_control through absl. Any other MuJoCo
    warning is re-raised as a Python RuntimeWarning. The previous callbacks are restored."""
    previous = mujoco.get_mju_user_warning()
    absl_logger = logging.getLogger("absl")
    absl_level = absl_logger.level

    def forward(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(forward)
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
        absl_logger.setLevel(absl_level)


def import_dm_control_suite():
    """`dm_control.suite`, imported without the GLFW "DISPLAY environment variable is missing"
    warning that its renderer probe gives on headless machines (nothing here renders)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dm_control import suite
    return suite
