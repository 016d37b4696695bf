package campaign

import (
	"os"
	"strings"
	"testing"
)

// TestReadAttachmentsGrown: a file that holds more than its size when
// checked (a file being appended to; /proc files, which stat as empty
// regular files) is refused, so the per-campaign total checked against
// the stat sizes is the total stored.
func TestReadAttachmentsGrown(t *testing.T) {
	const grown = "/proc/self/status"
	fi, err := os.Stat(grown)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
		t.Skipf("%s is not an empty-looking regular file here", grown)
	}
	files, _, err := readAttachments([]string{grown})
	if err == nil || !strings.Contains(err.Error(), "more than 0 bytes") {
		t.Fatalf("readAttachments(%s) = %+v, %v; want it refused as grown past its checked size", grown, files, err)
	}
}
