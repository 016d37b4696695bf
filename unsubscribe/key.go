package unsubscribe

import "github.com/blaster-mail/blaster/internal/secretkey"

// KeyEnv is the environment variable holding the secret key.
const KeyEnv = "BLASTER_UNSUBSCRIBE_KEY"

// LoadKey returns the secret key: the contents of file if file is not ""
// (one trailing newline removed, so `openssl rand -hex 32 > key` works),
// else the value of getenv(KeyEnv). Either must be at least MinKeyLen
// bytes. The key is used as given (hex text is fine: its bytes are the key).
// getenv is os.Getenv outside tests.
func LoadKey(file string, getenv func(string) string) ([]byte, error) {
	return secretkey.Load("unsubscribe", KeyEnv, file, getenv, MinKeyLen)
}
