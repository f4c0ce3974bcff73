//! EtcdStore: placeholder being written.
