"""The definition model: the YAML format and its validation (``parser``), immutable
versioned snapshots and their canonical JSON (``snapshot``), and what changes between
two sets of definitions (``diff``). Pure: no I/O beyond reading a definitions file.
The registry port and its adapters (``featurestore.registry``) store what this defines."""
