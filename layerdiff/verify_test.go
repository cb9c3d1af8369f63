package layerdiff

// The package's tests check the shortcuts around the slow walks
// (plainInUpper, resolvePath's) against the walks, which panic on any
// difference; tests of speed turn it off.
func init() { verifyShortcuts = true }
