package unsubscribe

import (
	"bytes"
	"fmt"
	"os"
)

// KeyEnv is the environment variable holding the secret key.
const KeyEnv = "BLASTER_UNSUBSCRIBE_KEY"

// LoadKey returns the secret key: the contents of file if file is not ""
// (one trailing newline removed, so `openssl rand -hex 32 > key` works),
// else the value of getenv(KeyEnv). Either must be at least MinKeyLen
// bytes. The key is used as given (hex text is fine: its bytes are the key).
// getenv is os.Getenv outside tests.
func LoadKey(file string, getenv func(string) string) ([]byte, error) {
	var key []byte
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading unsubscribe key: %w", err)
		}
		key = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
		if len(key) < MinKeyLen {
			return nil, fmt.Errorf("unsubscribe key file %s: %d bytes, need at least %d", file, len(key), MinKeyLen)
		}
	default:
		key = []byte(getenv(KeyEnv))
		if len(key) == 0 {
			return nil, fmt.Errorf("no unsubscribe key: set %s or give a key file", KeyEnv)
		}
		if len(key) < MinKeyLen {
			return nil, fmt.Errorf("%s: %d bytes, need at least %d", KeyEnv, len(key), MinKeyLen)
		}
	}
	return key, nil
}
