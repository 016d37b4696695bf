package contact

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/blaster-mail/blaster/internal/dbtest"
)

// BenchmarkImport imports 100,000 fresh contacts per iteration (the tables
// are emptied between iterations, outside the timer) and reports rows/s.
// The 1,000,000-row figure against psql \copy is bench/import.sh's.
func BenchmarkImport(b *testing.B) {
	const rows = 100_000
	var buf bytes.Buffer
	buf.WriteString("email,name,city,plan\n")
	for i := range rows {
		fmt.Fprintf(&buf, "user%d@d%d.example,User %d,Oslo,pro\n", i, i%50, i)
	}
	data := buf.Bytes()
	pool := dbtest.Pool(b)
	ctx := context.Background()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if _, err := pool.Exec(ctx, "TRUNCATE contacts, lists CASCADE"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		sum, err := Import(ctx, pool, bytes.NewReader(data), ImportOptions{List: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		if sum.Inserted != rows {
			b.Fatalf("inserted %d, want %d", sum.Inserted, rows)
		}
	}
	b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
}
