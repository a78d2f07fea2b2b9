//! The config file: its shape (`model`, with the plugins' settings and the table of
//! built-in plugins in `plugins`), units, loading with every error and its path (`load`)
//! and the error list (`error`). Semantic checks and warnings are `checks`; compiling into
//! the runtime is `runtime::Runtime::compile`.

pub mod error;
pub mod load;
pub mod model;
pub mod plugins;
pub mod units;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod reference_tests;

pub use error::{ConfigError, ConfigErrors};
pub use model::Config;

/// Read and parse the file at `path`.
pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push("", format!("cannot read {}: {e}", path.display()));
        errs
    })?;
    load::parse(&text)
}
