//! Builds the test fixture modules (hostile ops, a v2 of `mul`, the example
//! `pow` op) into components, and tells the tests where they are.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("..");
    let target_dir = op_build::build_script_target_dir(&root);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?).join("fixture-ops");
    let mut crates = vec![
        root.join("ops/add"),
        root.join("ops/mul"),
        root.join("ops/pow"),
    ];
    for fixture in [
        "spin", "hog", "crash", "mul-v2", "sneaky", "bigdoc", "stall", "remember", "slow",
    ] {
        crates.push(manifest_dir.join("fixtures/ops").join(fixture));
    }
    let guests = crates
        .iter()
        .map(|dir| op_build::Guest::conventional(dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    op_build::build(&guests, &target_dir, &out_dir)?;
    println!("cargo:rustc-env=FIXTURE_OPS_DIR={}", out_dir.display());
    for dir in crates
        .iter()
        .chain([&root.join("ops/wit"), &root.join("ops/guest-arena")])
    {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    Ok(())
}
