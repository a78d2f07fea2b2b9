//! Plugins from outside moat: a custom binary registers factories by name, and a config
//! naming one of them compiles it like a built-in. This is the extension story of
//! `plugins/`: a crate depends on the `moat` library, implements [`super::Plugin`] and a
//! [`PluginFactory`], and calls [`crate::cli::main_with`] with its [`Extensions`].
//!
//! Settings stay typed: a factory decodes them into its own `deny_unknown_fields` struct
//! when the config is compiled (at `moat check` and every reload), so a misspelt key or
//! an unregistered plugin fails at load time with its path, never at request time.

use super::Plugin;
use crate::config::error::ConfigErrors;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Builds one kind of external plugin from its settings.
pub trait PluginFactory: Send + Sync {
    /// Compile `settings` found at `path`; record problems in `errs` and return `None`
    /// when they are not valid.
    fn compile(
        &self,
        settings: &serde_yaml::Value,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<Arc<dyn Plugin>>;
}

/// The external plugins a binary knows, by name. The stock `moat` binary has none.
#[derive(Clone, Default)]
pub struct Extensions {
    factories: BTreeMap<String, Arc<dyn PluginFactory>>,
}

impl Extensions {
    /// Register `factory` under `name` (a built-in name cannot be taken: the built-in
    /// always wins when decoding the config).
    pub fn register(mut self, name: &str, factory: impl PluginFactory + 'static) -> Extensions {
        self.factories.insert(name.to_string(), Arc::new(factory));
        self
    }

    /// The factory for `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn PluginFactory>> {
        self.factories.get(name)
    }

    /// Registered names, for error messages.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }
}

/// Helper for factories: decode `settings` into `T`, recording the error at `path`.
pub fn decode<T: serde::de::DeserializeOwned>(
    settings: &serde_yaml::Value,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<T> {
    let value = if settings.is_null() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        settings.clone()
    };
    match serde_yaml::from_value::<T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.push(path, e.to_string());
            None
        }
    }
}
