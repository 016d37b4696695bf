// Command gencsv writes a synthetic contacts CSV for import benchmarks:
// a header (email,name,city,plan) and -rows rows of unique, valid addresses
// under .example domains, deterministic for a given -seed.
//
//	go run ./bench/gencsv -rows 1000000 -o /tmp/contacts.csv
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
)

func main() {
	rows := flag.Int("rows", 1_000_000, "number of data rows")
	out := flag.String("o", "-", `output file ("-" = stdout)`)
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if err := run(*rows, *out, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "gencsv:", err)
		os.Exit(1)
	}
}

func run(rows int, out string, seed uint64) error {
	var w io.Writer = os.Stdout
	if out != "-" {
		f, err := os.Create(out)
		if err != nil {
			return fmt.Errorf("creating %s: %w", out, err)
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := write(bw, rows, seed); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return nil
}

var (
	first  = []string{"Ann", "Bob", "Carl", "Dora", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea"}
	last   = []string{"Lee", "Smith", "Müller", "García", "Rossi", "Novak", "Kowalski", "Dubois"}
	cities = []string{"Oslo", "Rome", "Lima", "Kyiv", "Bern", "Riga", "Nice", "São Paulo", "Zürich"}
	plans  = []string{"free", "pro", "team"}
)

// write emits the CSV. Addresses are unique by construction (the row number
// is in the local part); 50 domains give the batcher something to group.
func write(w *bufio.Writer, rows int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w.WriteString("email,name,city,plan\n")
	var b []byte
	for i := range rows {
		b = b[:0]
		f, l := first[rng.IntN(len(first))], last[rng.IntN(len(last))]
		b = append(b, "user"...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, "@d"...)
		b = strconv.AppendInt(b, int64(rng.IntN(50)), 10)
		b = append(b, ".example,"...)
		b = append(b, f...)
		b = append(b, ' ')
		b = append(b, l...)
		b = append(b, ',')
		b = append(b, cities[rng.IntN(len(cities))]...)
		b = append(b, ',')
		b = append(b, plans[rng.IntN(len(plans))]...)
		b = append(b, '\n')
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("writing: %w", err)
		}
	}
	return nil
}
