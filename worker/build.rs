//! Builds the `add` and `mul` guests into components and embeds them, so a
//! bare `worker` binary runs with no module files around.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ops_dir = manifest_dir.join("../ops");
    let target_dir = op_build::build_script_target_dir(&manifest_dir.join(".."));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let guests = ["add", "mul"]
        .iter()
        .map(|op| op_build::Guest::conventional(&ops_dir.join(op)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    op_build::build(&guests, &target_dir, &out_dir)?;

    for path in ["wit", "add", "mul", "guest-arena", "../Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", ops_dir.join(path).display());
    }
    Ok(())
}
