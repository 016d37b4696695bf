package campaign

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/blaster-mail/blaster/message"
)

// MaxAttachmentBytes caps the total size of a campaign's attachments: 25
// MiB, the message size limit of the large mailbox providers (base64 makes
// the message a third larger still).
const MaxAttachmentBytes = 25 << 20

// File is one attachment stored with a campaign (table campaign_files).
type File struct {
	Position  int    `json:"position"`
	Name      string `json:"name"`
	MediaType string `json:"media_type"`
	Size      int64  `json:"size"`
	SHA256    []byte `json:"-"`
}

// readAttachments reads and checks the files at paths for storing: each a
// regular file with a name fit for Content-Disposition
// (message.CheckFilename), all of them together at most
// MaxAttachmentBytes. The media type is the extension's, else sniffed from
// the content.
func readAttachments(paths []string) ([]File, [][]byte, error) {
	var files []File
	var contents [][]byte
	var total int64
	for i, path := range paths {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, nil, fmt.Errorf("attachment %d: %w", i+1, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, nil, fmt.Errorf("attachment %d (%s): not a regular file", i+1, path)
		}
		if total += fi.Size(); total > MaxAttachmentBytes {
			return nil, nil, fmt.Errorf("attachment %d (%s): attachments total %d bytes, more than the %d allowed per campaign",
				i+1, path, total, MaxAttachmentBytes)
		}
		name := filepath.Base(path)
		if err := message.CheckFilename(name); err != nil {
			return nil, nil, fmt.Errorf("attachment %d (%s): %w", i+1, path, err)
		}
		b, err := readFile(path, fi.Size()) // as checked against the total
		if err != nil {
			return nil, nil, fmt.Errorf("attachment %d: %w", i+1, err)
		}
		mt := mime.TypeByExtension(filepath.Ext(name))
		if mt == "" {
			mt = http.DetectContentType(b) // the WHATWG sniffing algorithm
		}
		sum := sha256.Sum256(b)
		files = append(files, File{Position: i, Name: name, MediaType: mt, Size: int64(len(b)), SHA256: sum[:]})
		contents = append(contents, b)
	}
	return files, contents, nil
}

// readFile reads at most limit bytes of path; a file that grew past its
// checked size is an error.
func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return b, nil
}

// fileColumns are files' fields as columns, for unnest.
func fileColumns(files []File) (pos []int32, names, types []string, sizes []int64, sums [][]byte) {
	for _, f := range files {
		pos = append(pos, int32(f.Position))
		names = append(names, f.Name)
		types = append(types, f.MediaType)
		sizes = append(sizes, f.Size)
		sums = append(sums, f.SHA256)
	}
	return pos, names, types, sizes, sums
}

// Files lists a campaign's attachments, in message order.
func Files(ctx context.Context, q Querier, campaignID int64) ([]File, error) {
	rows, err := q.Query(ctx, `
		SELECT position, name, media_type, size, sha256 FROM campaign_files
		WHERE campaign_id = $1 ORDER BY position`, campaignID)
	if err != nil {
		return nil, fmt.Errorf("listing attachments of campaign %d: %w", campaignID, err)
	}
	files, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (File, error) {
		var f File
		err := row.Scan(&f.Position, &f.Name, &f.MediaType, &f.Size, &f.SHA256)
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing attachments of campaign %d: %w", campaignID, err)
	}
	return files, nil
}

// fileChunk is how much of a file one query reads.
const fileChunk = 1 << 20

// Materialize copies a campaign's attachments from the database into dir
// (one subdirectory per file, so names never collide and keep their
// original spelling) and returns them for message.Content.Files. Each file
// is read in fileChunk slices, so a 25 MiB attachment never sits in memory
// whole, and checked against its stored SHA-256. The caller owns dir and
// removes it.
func Materialize(ctx context.Context, q Querier, campaignID int64, dir string) ([]message.Attachment, error) {
	files, err := Files(ctx, q, campaignID)
	if err != nil {
		return nil, err
	}
	out := make([]message.Attachment, 0, len(files))
	for _, f := range files {
		// Stored names passed CheckFilename at create time; check again,
		// as the name becomes a path here.
		if err := message.CheckFilename(f.Name); err != nil {
			return nil, fmt.Errorf("attachment %d of campaign %d: %w", f.Position, campaignID, err)
		}
		sub := filepath.Join(dir, strconv.Itoa(f.Position))
		if err := os.Mkdir(sub, 0o700); err != nil {
			return nil, fmt.Errorf("materializing attachments of campaign %d: %w", campaignID, err)
		}
		path := filepath.Join(sub, f.Name)
		if err := copyFile(ctx, q, campaignID, f, path); err != nil {
			return nil, err
		}
		out = append(out, message.Attachment{Path: path, Name: f.Name, MediaType: f.MediaType})
	}
	return out, nil
}

func copyFile(ctx context.Context, q Querier, campaignID int64, f File, path string) (err error) {
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("materializing attachment %s of campaign %d: %w", f.Name, campaignID, err)
	}
	defer func() {
		if cerr := w.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("materializing attachment %s of campaign %d: %w", f.Name, campaignID, cerr)
		}
	}()
	h := sha256.New()
	cw := &chunkWriter{w: io.MultiWriter(w, h)}
	for off := int64(0); off < f.Size; off += fileChunk {
		// substring() counts from 1.
		err := q.QueryRow(ctx, `SELECT substring(content FROM $3 FOR $4) FROM campaign_files
			WHERE campaign_id = $1 AND position = $2`, campaignID, f.Position, off+1, fileChunk).Scan(cw)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("attachment %s of campaign %d: gone from the database", f.Name, campaignID)
		}
		if err != nil {
			return fmt.Errorf("copying attachment %s of campaign %d: %w", f.Name, campaignID, err)
		}
		if cw.n == 0 {
			break
		}
	}
	if !bytes.Equal(h.Sum(nil), f.SHA256) {
		return fmt.Errorf("attachment %s of campaign %d: content does not match its stored SHA-256", f.Name, campaignID)
	}
	return nil
}

// chunkWriter takes a bytea value straight from pgx's read buffer
// (pgtype.BytesScanner) and writes it on, so no copy of a chunk is made.
type chunkWriter struct {
	w io.Writer
	n int // bytes in the last chunk
}

func (c *chunkWriter) ScanBytes(src []byte) error {
	c.n = len(src)
	_, err := c.w.Write(src)
	return err
}
