//! OAuth2 for the upstream accounts: the encrypted token store, the flows against Microsoft
//! Entra ID (or a generic provider), and the token manager that keeps every account's token
//! valid.

pub mod credential;
pub mod error;
pub mod flows;
pub mod http;
pub mod key;
pub mod manager;
pub mod provider;
pub mod secret;
pub mod store;

pub use key::TokenKey;
pub use secret::Secret;
pub use store::{FileStore, Saved, StoreError, Stored, StoredTokens, TokenStore, Write};
