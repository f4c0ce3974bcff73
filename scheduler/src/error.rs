//! The scheduler's errors.

/// A configuration the scheduler cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file does not parse.
    #[error("failed to parse the scheduler configuration: {0}")]
    Parse(String),
    /// A profile names a plugin nobody registered.
    #[error("profile {profile}: unknown plugin {plugin}")]
    UnknownPlugin {
        /// The profile's scheduler name.
        profile: String,
        /// The plugin.
        plugin: String,
    },
    /// A profile is inconsistent.
    #[error("profile {profile}: {message}")]
    Invalid {
        /// The profile's scheduler name.
        profile: String,
        /// What is wrong.
        message: String,
    },
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cluster could not be read.
    #[error("failed to {operation}: {source}")]
    Api {
        /// What the scheduler was doing.
        operation: String,
        /// The client's error.
        #[source]
        source: keelson_core::Error,
    },
}
