// Package secretkey loads the HMAC keys blaster signs with (one-click
// unsubscribe tokens, return paths) from an environment variable or a key
// file: never from the database or the command line, where other users and
// backups would see them.
package secretkey

import (
	"bytes"
	"fmt"
	"os"
)

// Load returns the key named what ("unsubscribe", "bounce"): the contents
// of file if file is not "" (one trailing newline removed, so
// `openssl rand -hex 32 > key` works), else the value of getenv(env).
// Either must be at least minLen bytes. The key is used as given (hex text
// is fine: its bytes are the key). getenv is os.Getenv outside tests.
func Load(what, env, file string, getenv func(string) string, minLen int) ([]byte, error) {
	var key []byte
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading %s key: %w", what, err)
		}
		key = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
		if len(key) < minLen {
			return nil, fmt.Errorf("%s key file %s: %d bytes, need at least %d", what, file, len(key), minLen)
		}
	default:
		key = []byte(getenv(env))
		if len(key) == 0 {
			return nil, fmt.Errorf("no %s key: set %s or give a key file", what, env)
		}
		if len(key) < minLen {
			return nil, fmt.Errorf("%s: %d bytes, need at least %d", env, len(key), minLen)
		}
	}
	return key, nil
}
