//! placeholder
/// placeholder
#[derive(Debug)]
pub struct ControllerManager;
/// placeholder
#[derive(Debug)]
pub struct ControllerManagerConfig;
