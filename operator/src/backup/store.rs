//! The S3 client of a TitanBackup: credentials read from its Secret, and an
//! `object_store` S3 store with bounded retries and timeouts (a wrong
//! endpoint fails the backup in seconds, not after minutes of retries).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::BackupError;
use super::resource::{ACCESS_KEY_ID, S3Destination, SECRET_ACCESS_KEY, SESSION_TOKEN};

/// Retries and timeouts of S3 requests.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Retries of one request.
    pub max_retries: usize,
    /// Longest time spent retrying one request.
    pub retry_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one request (a part upload included).
    pub request_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// Static S3 credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, if present.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Reads the credentials from the Secret `name`.
pub fn credentials_from_secret(secret: &Secret, name: &str) -> Result<S3Credentials, BackupError> {
    let value = |key: &'static str| -> Option<String> {
        let text = crate::kube_io::secret_text(secret, key)?;
        let text = text.trim().to_string();
        (!text.is_empty()).then_some(text)
    };
    let required = |key: &'static str| {
        value(key).ok_or_else(|| BackupError::CredentialsIncomplete {
            secret: name.to_string(),
            key,
        })
    };
    Ok(S3Credentials {
        access_key_id: required(ACCESS_KEY_ID)?,
        secret_access_key: required(SECRET_ACCESS_KEY)?,
        session_token: value(SESSION_TOKEN),
    })
}

/// Reads the Secret `name` in `namespace` and its credentials. The outer
/// error is an API server failure (retried); the inner one says what the
/// user must fix (the Secret is missing or incomplete).
pub async fn read_credentials(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Result<S3Credentials, BackupError>, crate::reconcile::Error> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(crate::reconcile::Error::kube("get credentials Secret"))?;
    Ok(match secret {
        Some(secret) => credentials_from_secret(&secret, name),
        None => Err(BackupError::CredentialsSecretMissing {
            secret: name.to_string(),
        }),
    })
}

/// An S3 store for `dest` (path-style requests, so any S3-compatible server works).
pub fn s3_store(
    dest: &S3Destination,
    credentials: &S3Credentials,
    config: &StoreConfig,
) -> Result<Arc<dyn ObjectStore>, BackupError> {
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: config.max_retries,
        retry_timeout: config.retry_timeout,
    };
    let options = ClientOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_timeout(config.request_timeout)
        .with_allow_http(dest.allow_http);
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&dest.bucket)
        .with_region(&dest.region)
        .with_access_key_id(&credentials.access_key_id)
        .with_secret_access_key(&credentials.secret_access_key)
        .with_allow_http(dest.allow_http)
        .with_virtual_hosted_style_request(false)
        .with_retry(retry)
        .with_client_options(options);
    if let Some(endpoint) = &dest.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(token) = &credentials.session_token {
        builder = builder.with_token(token);
    }
    let store = builder
        .build()
        .map_err(|e| BackupError::InvalidDestination(e.to_string()))?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn credentials_need_both_keys_non_empty_and_take_an_optional_token() {
        let ok = credentials_from_secret(
            &secret(&[(ACCESS_KEY_ID, "ak\n"), (SECRET_ACCESS_KEY, "sk")]),
            "s3",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (ok.access_key_id.as_str(), ok.session_token.as_deref()),
            ("ak", None)
        );
        assert!(!format!("{ok:?}").contains("sk"), "Debug hides the secret");
        let with_token = credentials_from_secret(
            &secret(&[
                (ACCESS_KEY_ID, "a"),
                (SECRET_ACCESS_KEY, "s"),
                (SESSION_TOKEN, "t"),
            ]),
            "s3",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(with_token.session_token.as_deref(), Some("t"));
        let table: [(&[(&str, &str)], &str); 4] = [
            (&[], ACCESS_KEY_ID),
            (&[(ACCESS_KEY_ID, "a")], SECRET_ACCESS_KEY),
            (
                &[(ACCESS_KEY_ID, " "), (SECRET_ACCESS_KEY, "s")],
                ACCESS_KEY_ID,
            ),
            (
                &[(ACCESS_KEY_ID, "a"), (SECRET_ACCESS_KEY, "")],
                SECRET_ACCESS_KEY,
            ),
        ];
        for (pairs, missing) in table {
            match credentials_from_secret(&secret(pairs), "s3") {
                Err(e @ BackupError::CredentialsIncomplete { key, .. }) => {
                    assert_eq!(key, missing, "{pairs:?}");
                    assert_eq!(e.reason(), "CredentialsIncomplete");
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
        let no_data = credentials_from_secret(&Secret::default(), "s3");
        assert!(matches!(
            no_data,
            Err(BackupError::CredentialsIncomplete { .. })
        ));
    }
}
