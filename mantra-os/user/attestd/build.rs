include!("../link.rs");
