//! keelson-core: the object model every Keelson crate shares.
