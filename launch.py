"""diffjax's one entry point: flags -> config -> job.

  python launch.py --config configs/default.py --workdir runs/default
  python launch.py --config configs/cifar10_ddpm.py:tiny --workdir runs/c10 --config.optim.lr=1e-4
  python launch.py --config configs/default.py --workdir runs/default --mode sample  # or eval
  python launch.py --config configs/default.py --workdir runs/default --mode ref_stats
  python launch.py --config configs/default.py --workdir runs/sweep --sweep [--dry_run]
  python launch.py --config configs/cifar10_ddpm.py --workdir runs/c10 --mode estimate
  python launch.py --config configs/prep_cifar10.py --workdir data/c10 --mode prep  # data prep

On every host of a TPU pod (or task of a SLURM job) run the same command; elsewhere pass
--coordinator_address, --num_processes and --process_id.
"""

import sys

if __name__ == "__main__":  # first: glibc reads its tunables only when a process starts
  from diffjax.host import reexec_with_huge_pages
  reexec_with_huge_pages()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffjax.faults import EXIT_CONFIG, RunFault  # noqa: E402
from diffjax.fields import ConfigError  # noqa: E402
from diffjax import overrides  # noqa: E402

config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]")
flags.DEFINE_string("workdir", None, "run folder: checkpoints, logs, samples (resumes if present); "
                    "with --mode prep, the prepared dataset's folder")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "ref_stats", "estimate", "prep",
                                    "encode"], "job to run")
flags.DEFINE_bool("sweep", False, "run every point of the config file's get_sweep()")
flags.DEFINE_bool("dry_run", False, "with --sweep: print one command per point, run nothing")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "start jax.distributed (auto: when a cluster or coordinator flags are found)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (other clusters)")
flags.DEFINE_integer("num_processes", None, "number of processes (other clusters)")
flags.DEFINE_integer("process_id", None, "this process's index (other clusters)")
flags.DEFINE_string("compile_cache", "auto", "XLA compilation cache folder ('auto': "
                    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/diffjax/jax; empty: off)")
flags.DEFINE_bool("split_cpu", True, "on a CPU-only host, one XLA device per core (faster)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:  # orbax and grain log every file operation at INFO
    logging.set_verbosity(logging.WARNING)
  from diffjax import jobs  # after flag parsing, so --help stays fast
  try:
    config = FLAGS.config  # ml_collections reports a config file that failed to load here
    config.experiment  # noqa: B018
  except OSError as e:
    print(f"error: {overrides.config_file_error(e)}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)

  try:
    if FLAGS.sweep:
      jobs.run_sweep(FLAGS["config"], FLAGS.workdir, dry_run=FLAGS.dry_run, argv=sys.argv)
      return
    if FLAGS.mode == "prep" or config.get("job") == "prep":  # a Beam job: no JAX devices
      jobs.run(FLAGS.mode, config, FLAGS.workdir)
      return
    if FLAGS.split_cpu and FLAGS.distributed != "on":
      jobs.split_cpu(config.data.batch_size)
    jobs.start_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
    jobs.enable_compile_cache(jobs.compile_cache_dir(FLAGS.compile_cache))
    jobs.run(FLAGS.mode, config, FLAGS.workdir)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)
  except RunFault as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


def parse_flags(argv):
  """absl's parser; overrides of free-form sections (``model.kwargs``, ``sample.options``,
  ...) are set after it; a bad command line is reported in one line."""
  argv, free_form = overrides.split_free_form(argv)
  original, sys.argv = sys.argv, argv  # ml_collections reads its overrides from sys.argv
  try:
    rest = FLAGS(argv)
    if len(rest) > 1:
      raise flags.Error(f"unexpected argument(s) {rest[1:]}; every option is a --flag")
    overrides.apply_free_form(FLAGS.config, free_form)
    return rest
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    print(f"error: {overrides.flag_error_message(e, argv)}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)
  finally:
    sys.argv = original


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
