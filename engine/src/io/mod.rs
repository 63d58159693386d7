//! The io layer: the only code that imports glommio.
