"""Suites: ``leaderboards/<suite>/suite.yaml`` → frozen, typed, validated objects.

The modules, each imported on its own (this package re-exports nothing):

* :mod:`bench.suite.schema`: the typed suite (:class:`~bench.suite.schema.Suite` and its parts),
  the keys of the format, and :class:`~bench.suite.schema.SuiteError`;
* :mod:`bench.suite.load`: ``load_suite``/``parse_suite``, a file or YAML text to a ``Suite``;
* :mod:`bench.suite.validate` (with :mod:`~bench.suite.validate_pairs`,
  :mod:`~bench.suite.validate_methods` and the generic :mod:`~bench.suite.checks`): pure
  functions from parsed YAML to typed values and the problems found;
* :mod:`bench.suite.expand`: a suite's student trials and teachers.

A suite file is data (``yaml.safe_load``; nothing in it executes but the ``plugins:`` files a
sweep imports, which a dry run only lists). Everything is checked before any work starts:
unknown keys and names (with suggestions), wrong types, empty grids, parameters a method does
not have, and (given the nodes of a cluster) resources no node can satisfy. Every
problem is reported at once, each with its key path and line, e.g.
``suite.yaml:14: methods[3].params.temprature: unknown parameter … Did you mean 'temperature'?``

The schema (``leaderboards/digits/suite.yaml`` is a complete example)::

    name: digits                 # [A-Za-z0-9_.-]+; default: the suite's folder name
    description: free text
    experiment: digits           # MLflow experiment; default: the name
    phase: final                 # tune (selection on val) | final (fresh seeds, test)
    datasets: [digits]           # names, or {name, data_root, download, train_size}; files
                                 # are looked for under data_root, $KDBENCH_DATA's folders and
                                 # /usr/share/datasets; train_size: students train on a
                                 # stratified subset of N training samples (teachers on all)
    val_fraction: 0.1
    pairs:                       # teacher → student
      - {teacher: resnet20, student: resnet8}
      - {teacher: vgg8, student: mobile_half, teacher_checkpoint: ckpt/vgg8.pt}
      - teacher: vgg13           # a pair's own recipe, merged over the suite's (below)
        student: mobile_half
        recipe: {student: {lr: 0.01}}
      - {teacher: resnet20, student: resnet8, teacher_epochs: [1, 2, 4]}
                                 # early-stopped teachers: checkpoints of one teacher training
                                 # after 1, 2 and 4 of its recipe's epochs, one pair each
      - {teacher: resnet20, student: resnet8, student_checkpoint: ckpt/resnet8-pretrained.pt}
                                 # the student starts from a pretrained state dict (shapes that
                                 # differ, e.g. another classifier width, stay freshly drawn)
    methods:
      - ce                                   # the method's default params
      - {name: kd, params: {temperature: 4}} # fixed params
      - {name: dkd, search: {beta: [2, 8]}}  # phase tune only; ``search: default`` uses the
                                             # method's own ``search_space``
    seeds: 5                     # 0..4, or an explicit list [100, 101, …]
    recipe:
      student: {epochs: 30, batch_size: 64, lr: 0.05}   # any bench.config.Recipe field
      teacher: {epochs: 60}      # default: the student's recipe
      # transfer learning: student: {trainable: [head]} trains the classifier only (any other
      # entry is a parameter name prefix); the rest keeps its weights and BatchNorm statistics
    teacher_seed: 0
    resources: {cpu: 1, gpu: 0.25}          # per student trial (fractional GPUs pack)
    teacher_resources: {cpu: 4, gpu: 1}      # per teacher; default: ``resources``
    tune: {budget: 4}            # phase tune: configurations per method (equal budget)
    max_failures: 3              # retries of a trial whose worker or node died
    checkpoint: {epochs: 10, minutes: 15}
                                 # a running trial saves its state every 10 epochs and after
                                 # any epoch ending 15 minutes after the last save (0: never);
                                 # a trial restarted after a lost node or a stopped driver
                                 # continues from its last save
    plugins: [my_method.py]      # method files to load, relative to the suite
    study: {parameter: temperature, method: kd, reference: 4.0}
                                 # optional: the leaderboard plots accuracy against this
                                 # method parameter, or against the teacher's training epochs
                                 # with {parameter: teacher_epoch}; reference: the setting
                                 # its "gain over kd" column compares with
    leaderboard:                 # optional: the entries every method is compared with
      baseline: ce               # default: ce at its current version, default params
      reference: kd@1[temperature=4.0]
                                 # default: kd at its current version, default params;
                                 # METHOD, METHOD@VERSION or METHOD@VERSION[NAME=VALUE, ...],
                                 # or {method: kd, version: 1, params: {temperature: 4.0}};
                                 # a method of this suite, at a setting the suite runs
    compress:                    # optional post-stage of the sweep (phase final only)
      methods: [ce, kd]          # whose students; default: every method of the suite
      sparsities: [0.5, 0.8]     # global magnitude pruning, each in (0, 1); may be left out
      int8: true                 # int8 post-training quantization; default false
                                 # after the trials, each finished student of these methods
                                 # is measured as fp32, pruned at each sparsity and int8
                                 # (`kdbench compress`), each variant an MLflow child run of
                                 # its trial; the leaderboard adds a Compression section

The leaderboard's baseline and reference are one setting each, never "whichever ran": when a
method runs at several settings (a tune phase, a temperature study), ``kd`` still means kd at
its defaults, and the leaderboard says so loudly when that setting has no finished run instead
of comparing with another. Name another setting under ``leaderboard:`` (or, for a study of the
reference's parameter, with ``study: {reference: …}``; not both).

A method that uses no teacher (``ce``, self-distillation, online methods) runs once per
distinct student rather than once per pair: same config, same run key, one trial. The same
method may be listed several times with different params (a temperature study lists ``kd``
once per temperature); the leaderboard shows each setting as its own row.

The compression post-stage runs once per student: a sweep run again compresses only students
that have no record of a requested variant yet (see the sweep's compression stage).

A pair's ``recipe`` is merged over the suite's: its ``student`` fields over
``recipe.student``, its ``teacher`` fields over ``recipe.teacher`` (a pair's student override
does not change the teacher, which other pairs may share).
"""
