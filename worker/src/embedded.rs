//! The `add` and `mul` components built into the binary by `build.rs`.

pub fn module(op: &str) -> Option<&'static [u8]> {
    match op {
        "add" => Some(include_bytes!(concat!(env!("OUT_DIR"), "/add.wasm"))),
        "mul" => Some(include_bytes!(concat!(env!("OUT_DIR"), "/mul.wasm"))),
        _ => None,
    }
}
