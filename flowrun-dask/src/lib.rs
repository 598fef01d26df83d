//! `DaskTaskRunner` for flowrun.
#![deny(missing_docs)]

pub mod protocol;
