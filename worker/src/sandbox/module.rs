//! One compiled, validated version of an operation module.

use wasmtime::component::{Component, Linker};

use super::Sandbox;

wasmtime::component::bindgen!({ path: "../ops/wit", world: "operation" });

/// Why a component was refused. The previous version (if any) keeps serving.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LoadError {
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error(
        "the module imports `{0}`, which the workers:op contract does not grant (modules get no filesystem, network, environment, clock or randomness)"
    )]
    ForbiddenImport(String),
    #[error("the module does not implement the workers:op/operation contract: {0}")]
    Contract(String),
    #[error("describe() failed: {0}")]
    Describe(String),
    #[error("describe() returned an unusable description: {0}")]
    Description(String),
    #[error("this worker already offers {0} ops, the most one worker may offer; remove one first")]
    TooManyOps(usize),
    #[error("the module describes itself as `{actual}`, but was loaded as `{expected}`")]
    NameMismatch { expected: String, actual: String },
}

pub struct OpModule {
    pre: OperationPre<super::limits::Limits>,
    pub name: String,
    pub arity: u32,
    pub doc: String,
    /// Hex sha256 of the component bytes.
    pub digest: String,
}

impl OpModule {
    /// Checks imports (none allowed) and exports (the contract), pre-instantiates,
    /// and asks the module to describe itself.
    pub(super) fn load(
        sandbox: &Sandbox,
        component: Component,
        bytes: &[u8],
    ) -> Result<Self, LoadError> {
        let engine = sandbox.engine();
        if let Some((name, _)) = component.component_type().imports(engine).next() {
            return Err(LoadError::ForbiddenImport(name.to_string()));
        }
        let linker = Linker::new(engine);
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let pre =
            OperationPre::new(instance_pre).map_err(|e| LoadError::Contract(format!("{e:#}")))?;

        // describe() runs under the same deadline and memory cap as any
        // call, and its failure reads like a task's (no wasmtime backtrace).
        let mut store = sandbox.store();
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Describe(sandbox.classify(e).to_string()))?;
        let info = instance
            .call_describe(&mut store)
            .map_err(|e| LoadError::Describe(sandbox.classify(e).to_string()))?;
        check_description(&info.name, &info.doc)?;
        Ok(Self {
            pre,
            name: info.name,
            arity: info.arity,
            doc: info.doc,
            digest: wire::digest_hex(bytes),
        })
    }

    /// Refuses a module whose self-description names another op.
    pub fn expect_name(self, expected: &str) -> Result<Self, LoadError> {
        if self.name == expected {
            Ok(self)
        } else {
            Err(LoadError::NameMismatch {
                expected: expected.into(),
                actual: self.name,
            })
        }
    }

    pub(super) fn pre(&self) -> &OperationPre<super::limits::Limits> {
        &self.pre
    }

    pub fn info(&self) -> wire::OpInfo {
        wire::OpInfo {
            name: self.name.clone(),
            digest: self.digest.clone(),
            arity: self.arity,
            doc: self.doc.clone(),
        }
    }
}

/// Enforced here, where every module enters, so a module that loads can
/// always be registered with the planner (see [`wire::limits`]).
fn check_description(name: &str, doc: &str) -> Result<(), LoadError> {
    if !wire::is_valid_op_name(name) {
        return Err(LoadError::Description(format!(
            "name `{}` is not an op name (1 to {} of `a-z`, `0-9`, `-`, `_`, starting with a letter)",
            name.chars().take(80).collect::<String>(),
            wire::limits::MAX_OP_NAME_LEN
        )));
    }
    if doc.len() > wire::limits::MAX_OP_DOC_BYTES {
        return Err(LoadError::Description(format!(
            "doc is {} bytes, over the {}-byte limit",
            doc.len(),
            wire::limits::MAX_OP_DOC_BYTES
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_within_the_wire_limits_pass_and_others_are_refused_saying_why() {
        assert_eq!(check_description("pow", "a ** b"), Ok(()));
        let longest = "a".repeat(wire::limits::MAX_OP_NAME_LEN);
        assert_eq!(check_description(&longest, ""), Ok(()));
        let long_doc = "d".repeat(wire::limits::MAX_OP_DOC_BYTES + 1);
        let err = check_description("pow", &long_doc).unwrap_err().to_string();
        assert!(
            err.contains("1025 bytes") && err.contains("1024-byte"),
            "{err}"
        );
        let err = check_description(&format!("{longest}a"), "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not an op name") && err.contains("64"),
            "{err}"
        );
        assert!(check_description("Bad Name", "").is_err());
    }
}
