//! One compiled, validated version of an operation module.

use sha2::{Digest, Sha256};
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

        let mut store = sandbox.store();
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        let info = instance
            .call_describe(&mut store)
            .map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        Ok(Self {
            pre,
            name: info.name,
            arity: info.arity,
            doc: info.doc,
            digest: hex::encode(Sha256::digest(bytes)),
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
