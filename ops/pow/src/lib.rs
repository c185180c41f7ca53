//! The `pow` operation module: an op that is not built into the worker, to
//! show (and test) how a user adds their own. See `ops/README.md`.

wit_bindgen::generate!({ path: "../wit", world: "operation" });

// Every call runs in a fresh instance: a bump allocator over a static arena
// never frees and never grows memory, which makes a call about 3x cheaper
// than with Rust's default allocator (see ops/guest-arena).
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: guest_arena::Arena<{ 64 * 1024 }> = guest_arena::Arena::new();

struct Pow;

impl Guest for Pow {
    fn describe() -> OpInfo {
        OpInfo {
            name: "pow".into(),
            arity: 2,
            doc: "a raised to the power b (b >= 0), failing on i64 overflow".into(),
        }
    }

    fn apply(args: Vec<i64>) -> Result<i64, String> {
        let [base, exp] = args[..] else {
            return Err(format!("pow takes 2 arguments, got {}", args.len()));
        };
        let exp = u32::try_from(exp).map_err(|_| {
            format!(
                "pow needs an exponent between 0 and {}, got {exp}",
                u32::MAX
            )
        })?;
        base.checked_pow(exp).ok_or_else(|| {
            format!("overflow: {base}^{exp} does not fit in a signed 64-bit integer")
        })
    }
}

export!(Pow);
