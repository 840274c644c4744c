"""The SAE checkpoint formats, one module each, each ending with its declaration
`FORMAT = SAEFormat(...)` (see `faithcase.saes.registry`, which discovers these modules).

A new format is one new module here: its identifying files, its config checks and a loader
into `faithcase.saes.model.SAE`, using the shared checks of `faithcase.saes.helpers`. Modules
whose names start with "_" are not formats (helpers).
"""
