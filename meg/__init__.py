"""meg: the code that training and the service share.

`meg.bundle` (the bundle contract), `meg.preprocessing` (records to model rows, written
once), `meg.scoring` (scores and thresholds), `meg.mala` (the latent sampler),
`meg.render` (PNG previews) and `meg.cli` (the `meg` command). Neither `training` nor
`service` is imported from here, except lazily by the CLI's subcommands.
"""
