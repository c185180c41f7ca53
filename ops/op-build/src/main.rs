//! `op-build`: builds operation guest crates into components.
//!
//!     cargo run -p op-build -- ops/pow
//!
//! writes `target/ops/pow.wasm`, ready for `OPS_DIR` or `PUT /ops/pow`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use op_build::Guest;

#[derive(Parser)]
#[command(about = "Build operation guest crates into WebAssembly components")]
struct Args {
    /// Guest crate directories (each with a Cargo.toml whose package is `op-<name>`).
    #[arg(required = true)]
    crates: Vec<PathBuf>,
    /// Where the components go, as `<name>.wasm`.
    #[arg(long, default_value = "target/ops")]
    out: PathBuf,
    /// Cargo target dir for the guest build.
    #[arg(long, default_value = "target/wasm-ops")]
    target_dir: PathBuf,
}

fn main() {
    if let Err(err) = run(Args::parse()) {
        eprintln!("op-build: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let guests = args
        .crates
        .iter()
        .map(|dir| Guest::conventional(dir))
        .collect::<Result<Vec<_>>>()?;
    for out in op_build::build(&guests, &args.target_dir, &args.out)? {
        println!("{}", out.display());
    }
    Ok(())
}
