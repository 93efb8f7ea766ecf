//! An HTTP client for calls between pier processes whose TLS identity can be replaced while it
//! is in use (a renewed certificate, a rotated CA): calls made after [`HttpClient::set_tls`]
//! use the new one; calls in flight finish on the old connections.

use std::sync::Arc;

use arc_swap::ArcSwap;

type Customize = Arc<dyn Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync>;

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("scheme", &self.scheme())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct HttpClient {
    current: Arc<ArcSwap<reqwest::Client>>,
    customize: Customize,
    tls: bool,
}

impl HttpClient {
    /// A client built by `customize` (timeouts, pools); with `tls`, it speaks HTTPS with that
    /// rustls configuration only (no system roots).
    pub fn new(
        customize: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<HttpClient, reqwest::Error> {
        let customize: Customize = Arc::new(customize);
        let is_tls = tls.is_some();
        let client = build(&customize, tls)?;
        Ok(HttpClient {
            current: Arc::new(ArcSwap::from_pointee(client)),
            customize,
            tls: is_tls,
        })
    }

    /// "https" or "http", for building URLs to the peers this client talks to.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The client to make a call with now.
    pub fn get(&self) -> Arc<reqwest::Client> {
        self.current.load_full()
    }

    /// Replaces the TLS configuration for every later call.
    pub fn set_tls(&self, tls: rustls::ClientConfig) -> Result<(), reqwest::Error> {
        let client = build(&self.customize, Some(tls))?;
        self.current.store(Arc::new(client));
        Ok(())
    }
}

fn build(
    customize: &Customize,
    tls: Option<rustls::ClientConfig>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = customize(reqwest::Client::builder().no_proxy());
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build()
}
