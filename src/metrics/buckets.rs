//! Histogram bucket bounds: log-spaced defaults, from code or from the environment.

use std::fmt;
use std::sync::Arc;

/// Upper bounds of a histogram's buckets: finite, positive, strictly increasing (`+Inf` is
/// implied).
///
/// ```
/// use tokentrace::metrics::Buckets;
///
/// let ttft = Buckets::log_spaced(0.001, 480.0, 24);
/// assert_eq!(ttft.bounds().first(), Some(&0.001));
/// assert_eq!(ttft.bounds().last(), Some(&480.0));
/// assert_eq!(Buckets::parse("0.1, 0.5,1").unwrap().bounds(), [0.1, 0.5, 1.0]);
/// assert!(Buckets::parse("1,0.5").is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets(Arc<[f64]>);

impl Buckets {
    /// `count` bounds from `min` to `max`, evenly spaced on a log scale (rounded to three
    /// significant digits), as Dynamo's are.
    ///
    /// ```
    /// use tokentrace::metrics::Buckets;
    /// assert_eq!(Buckets::log_spaced(0.001, 1.0, 4).bounds(), [0.001, 0.01, 0.1, 1.0]);
    /// ```
    ///
    /// # Panics
    ///
    /// If `min` is not positive, `max` is not above it, or `count` is below 2: bounds chosen in
    /// code, so a mistake is a programming error.
    pub fn log_spaced(min: f64, max: f64, count: usize) -> Self {
        assert!(min > 0.0 && max > min && count >= 2, "log_spaced({min}, {max}, {count})");
        let step = (max / min).ln() / (count - 1) as f64;
        let mut bounds: Vec<f64> = (0..count).map(|i| round3(min * (step * i as f64).exp())).collect();
        bounds.dedup();
        Self(bounds.into())
    }

    /// Parses a comma-separated list of bounds (what the `TOKENTRACE_*_BUCKETS` variables hold).
    ///
    /// ```
    /// use tokentrace::metrics::Buckets;
    /// assert_eq!(Buckets::parse("nope").unwrap_err(), "`nope` is not a number");
    /// assert_eq!(Buckets::parse("").unwrap_err(), "no bounds");
    /// ```
    pub fn parse(list: &str) -> Result<Self, String> {
        let bounds = list
            .split(',')
            .map(str::trim)
            .filter(|bound| !bound.is_empty())
            .map(|bound| bound.parse::<f64>().map_err(|_| format!("`{bound}` is not a number")))
            .collect::<Result<Vec<f64>, String>>()?;
        Self::new(bounds)
    }

    /// Checks `bounds`: at least one, finite, positive and strictly increasing.
    ///
    /// ```
    /// use tokentrace::metrics::Buckets;
    /// assert!(Buckets::new(vec![1.0, 2.0, 4.0]).is_ok());
    /// assert!(Buckets::new(vec![1.0, f64::INFINITY]).is_err());
    /// ```
    pub fn new(bounds: Vec<f64>) -> Result<Self, String> {
        if bounds.is_empty() {
            return Err("no bounds".into());
        }
        if let Some(bad) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
            return Err(format!("{bad} is not a finite positive bound"));
        }
        if bounds.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err("bounds must be strictly increasing".into());
        }
        Ok(Self(bounds.into()))
    }

    /// The bounds.
    ///
    /// ```
    /// use tokentrace::metrics::Buckets;
    /// assert_eq!(Buckets::parse("1,2").unwrap().bounds().len(), 2);
    /// ```
    pub fn bounds(&self) -> &[f64] {
        &self.0
    }
}

fn round3(value: f64) -> f64 {
    let scale = 10f64.powi(2 - value.log10().floor() as i32);
    (value * scale).round() / scale
}

/// The frontend's histogram buckets.
///
/// ```
/// use tokentrace::metrics::FrontendBuckets;
///
/// let buckets = FrontendBuckets::from_vars([("TOKENTRACE_ITL_BUCKETS", "0.005,0.01,0.05")])?;
/// assert_eq!(buckets.itl.bounds(), [0.005, 0.01, 0.05]);
/// let error = FrontendBuckets::from_vars([("TOKENTRACE_TTFT_BUCKETS", "1,x")]).unwrap_err();
/// assert_eq!(error.variable(), "TOKENTRACE_TTFT_BUCKETS");
/// # Ok::<(), tokentrace::metrics::BucketsError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FrontendBuckets {
    /// Time to first token, seconds (default 1 ms to 480 s; `TOKENTRACE_TTFT_BUCKETS`).
    pub ttft: Buckets,
    /// Inter-token latency, seconds (default 1 ms to 2 s; `TOKENTRACE_ITL_BUCKETS`).
    pub itl: Buckets,
    /// Request duration, seconds (default 10 ms to 480 s; `TOKENTRACE_REQUEST_DURATION_BUCKETS`).
    pub duration: Buckets,
    /// Input and output sequence lengths, tokens (default 1 to 131072, powers of two;
    /// `TOKENTRACE_SEQUENCE_TOKENS_BUCKETS`).
    pub tokens: Buckets,
}

impl Default for FrontendBuckets {
    fn default() -> Self {
        Self {
            ttft: Buckets::log_spaced(0.001, 480.0, 24),
            itl: Buckets::log_spaced(0.001, 2.0, 20),
            duration: Buckets::log_spaced(0.01, 480.0, 20),
            tokens: Buckets((0..=17).map(|power| f64::from(1u32 << power)).collect()),
        }
    }
}

impl FrontendBuckets {
    /// The defaults, overridden by the `TOKENTRACE_*_BUCKETS` environment variables.
    ///
    /// ```
    /// use tokentrace::metrics::FrontendBuckets;
    /// if std::env::var_os("TOKENTRACE_ITL_BUCKETS").is_none() {
    ///     assert_eq!(FrontendBuckets::from_env()?.itl, FrontendBuckets::default().itl);
    /// }
    /// # Ok::<(), tokentrace::metrics::BucketsError>(())
    /// ```
    pub fn from_env() -> Result<Self, BucketsError> {
        Self::from_vars(std::env::vars())
    }

    /// Like [`FrontendBuckets::from_env`], from the given variables.
    ///
    /// ```
    /// use tokentrace::metrics::FrontendBuckets;
    /// let buckets = FrontendBuckets::from_vars([("TOKENTRACE_SEQUENCE_TOKENS_BUCKETS", "16,256,4096")])?;
    /// assert_eq!(buckets.tokens.bounds(), [16.0, 256.0, 4096.0]);
    /// # Ok::<(), tokentrace::metrics::BucketsError>(())
    /// ```
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, BucketsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut buckets = Self::default();
        for (key, value) in vars {
            let slot = match key.as_ref() {
                "TOKENTRACE_TTFT_BUCKETS" => &mut buckets.ttft,
                "TOKENTRACE_ITL_BUCKETS" => &mut buckets.itl,
                "TOKENTRACE_REQUEST_DURATION_BUCKETS" => &mut buckets.duration,
                "TOKENTRACE_SEQUENCE_TOKENS_BUCKETS" => &mut buckets.tokens,
                _ => continue,
            };
            *slot = Buckets::parse(value.as_ref())
                .map_err(|problem| BucketsError { variable: key.as_ref().to_owned(), problem })?;
        }
        Ok(buckets)
    }
}

/// A bad `TOKENTRACE_*_BUCKETS` value; names the variable.
///
/// ```
/// use tokentrace::metrics::FrontendBuckets;
/// let error = FrontendBuckets::from_vars([("TOKENTRACE_ITL_BUCKETS", "0.5,0.1")]).unwrap_err();
/// assert_eq!(error.to_string(), "TOKENTRACE_ITL_BUCKETS: bounds must be strictly increasing");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketsError {
    variable: String,
    problem: String,
}

impl BucketsError {
    /// The variable.
    ///
    /// ```
    /// use tokentrace::metrics::FrontendBuckets;
    /// let error = FrontendBuckets::from_vars([("TOKENTRACE_REQUEST_DURATION_BUCKETS", "-1")]).unwrap_err();
    /// assert_eq!(error.variable(), "TOKENTRACE_REQUEST_DURATION_BUCKETS");
    /// ```
    pub fn variable(&self) -> &str {
        &self.variable
    }
}

impl fmt::Display for BucketsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for BucketsError {}
