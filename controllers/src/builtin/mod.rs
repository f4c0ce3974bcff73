//! The built-in controllers.
