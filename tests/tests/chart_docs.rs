//! chart/README.md's values table is the one `chart/values.yaml`'s comments
//! give. `UPDATE_CHART_README=1 cargo test -p e2e --test chart_docs`
//! rewrites it after a change to values.yaml.

use std::path::Path;

use e2e::values_doc;

fn chart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../chart")
}

#[test]
fn every_value_has_a_comment_and_the_readme_table_is_generated_from_them() -> anyhow::Result<()> {
    let values = std::fs::read_to_string(chart().join("values.yaml"))?;
    let readme_path = chart().join("README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let expected = values_doc::update(&readme, &values)?;
    if std::env::var_os("UPDATE_CHART_README").is_some() {
        std::fs::write(&readme_path, &expected)?;
        return Ok(());
    }
    assert!(
        readme == expected,
        "chart/README.md's values table is out of date: run \
         UPDATE_CHART_README=1 cargo test -p e2e --test chart_docs"
    );
    Ok(())
}

#[test]
fn an_undocumented_leaf_value_is_refused() {
    let error = values_doc::rows("a:\n  # -- documented\n  b: 1\n  c: 2\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("`a.c` has no `# --` comment"), "{error}");
}

#[test]
fn a_documented_key_covers_its_subtree() -> anyhow::Result<()> {
    let rows = values_doc::rows(
        "# -- the probes\nprobes:\n  readiness:\n    path: /readyz\nx:\n  # -- y\n  y: 1\n",
    )?;
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["probes", "x.y"]);
    Ok(())
}
