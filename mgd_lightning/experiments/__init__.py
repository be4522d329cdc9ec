"""Multi-run experiments: the studies (``mgd-lightning study``, :mod:`mgd_lightning.commands.study`) and the config
comparison (:mod:`mgd_lightning.commands.compare`).

One small package that every experiment shares, so a new study is a settings entry and a spec, not a copy:

* :mod:`.records`: atomic JSON result files, CSV and ``mean ± std`` cells;
* :mod:`.runner`: run a list of jobs resumably, in this process or a pool of worker processes that die with
  their parent;
* :mod:`.claims`: the paper's claims checked on paired per-seed differences with 95 % t intervals;
* :mod:`.reports`: aggregates, markdown tables, the error / matching plots, the environment record and the
  refusal to mix runs of different settings in one folder;
* :mod:`.study`: :class:`~.study.Study` (a study's rows, settings, claims and run functions) and the driver
  that runs one (teacher(s) first, then every missing run, then the report);
* :mod:`.scratch` (students trained from scratch, Tables 1-2, 5, Fig. 4) and :mod:`.transfer`
  (pre-trained students fine-tuned on a small target set, Table 3): the two studies.
"""
