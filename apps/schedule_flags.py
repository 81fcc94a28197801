"""Flags shared by apps.train and apps.distill: a noise schedule and its options.

See keras_pd/schedules.py and docs/own-teacher.md. An option the schedule does not take is a
one-line error naming it.
"""

from absl import flags

from keras_pd.schedules import (DDPM_BETA_SCHEDULES, SCHEDULES, schedule_arguments,
                                 schedule_from_options)


def define(name, default, help_text):
    """Defines --NAME (the schedule) and the options of every schedule."""
    flags.DEFINE_enum(name, default, list(SCHEDULES), help_text)
    flags.DEFINE_float("logsnr_min", None, "cosine: lambda at t = 1 (default -20).")
    flags.DEFINE_float("logsnr_max", None, "cosine: lambda at t = 0 (default 20).")
    flags.DEFINE_integer("ddpm_timesteps", None, "ddpm: T (default 1000).")
    flags.DEFINE_float("beta_start", None, "ddpm: the first beta (default 1e-4).")
    flags.DEFINE_float("beta_end", None, "ddpm: the last beta (default 0.02).")
    flags.DEFINE_enum("beta_schedule", None, list(DDPM_BETA_SCHEDULES), "ddpm: default linear.")
    flags.DEFINE_float("flow_shift", None, "flow: the time shift (default 1: sigma = t).")


#: Each option flag and the schedule argument it sets.
OPTION_FLAGS = {"logsnr_min": "logsnr_min", "logsnr_max": "logsnr_max",
                "ddpm_timesteps": "num_timesteps", "beta_start": "beta_start",
                "beta_end": "beta_end", "beta_schedule": "beta_schedule", "flow_shift": "shift"}


def schedule(name):
    """The Schedule that --NAME and its options describe; an option of another schedule is a
    one-line error naming its flag."""
    f = flags.FLAGS
    kind = f[name].value
    given = {flag: f[flag].value for flag in OPTION_FLAGS if f[flag].value is not None}
    takes = schedule_arguments(kind)
    wrong = [flag for flag in given if OPTION_FLAGS[flag] not in takes]
    if wrong:
        mine = [flag for flag, arg in OPTION_FLAGS.items() if arg in takes]
        raise ValueError(f"--{wrong[0]} does not apply to --{name}={kind} (its options: "
                         f"{', '.join('--' + m for m in mine)})")
    return schedule_from_options(kind, **{OPTION_FLAGS[k]: v for k, v in given.items()})
