"""Derived features: computed in the join from stored features, other derived features
and request fields (docs/definitions.md, "Derived views").

``language`` parses and type-checks expressions into a typed IR; ``codegen`` turns a
derived view's IR into the source of one numba kernel; ``compiler`` builds kernels in a
child process (``build``) into an on-disk cache and loads them; ``ops`` holds the
operators the kernels call; ``evaluate`` plans and runs them inside a join, after
``request`` checked the request_data they read. Only
``compiler``, ``build`` and ``ops`` import numba, and only when a snapshot has derived
views."""
