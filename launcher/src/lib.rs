//! The whole system on this machine, as separate processes: [`run`] is
//! `scripts/local` (a planner and workers on 127.0.0.1, random tasks, a
//! checked summary); [`process`] starts and stops the real binaries, for it,
//! for the end-to-end tests and for the benchmark; [`postgres`] runs a
//! throwaway PostgreSQL for them; [`idle`] registers many idle workers.

pub mod idle;
pub mod postgres;
pub mod process;
pub mod run;
mod summary;

pub use run::{LocalArgs, run};
