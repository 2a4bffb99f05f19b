package flow

import (
	"net/netip"
	"testing"
)

func TestTableLifecycle(t *testing.T) {
	tab := NewTable(3)
	var idx []int32
	for i := 0; i < 3; i++ {
		n, f, err := tab.Alloc()
		if err != nil {
			t.Fatal(err)
		}
		f.PIF = [2]PIF{PIFTap, PIFHost}
		f.Side[Ini] = Side{EAddr: netip.MustParseAddr("192.0.2.2"), EPort: uint16(1000 + i), FAddr: netip.MustParseAddr("192.0.2.1"), FPort: 53}
		if err := tab.Insert(Ref{n, Ini}); err != nil {
			t.Fatal(err)
		}
		idx = append(idx, n)
	}
	if _, _, err := tab.Alloc(); err != ErrFull {
		t.Fatalf("want ErrFull, got %v", err)
	}
	k := Key{PIF: PIFTap, EAddr: netip.MustParseAddr("192.0.2.2"), EPort: 1001, FAddr: netip.MustParseAddr("192.0.2.1"), FPort: 53}
	r, ok := tab.Lookup(k)
	if !ok || r != (Ref{idx[1], Ini}) {
		t.Fatalf("lookup: %v %v", r, ok)
	}
	gen := tab.At(idx[1]).Gen
	tab.Free(idx[1])
	if _, ok := tab.Lookup(k); ok {
		t.Fatal("freed flow still hashed")
	}
	n, f, err := tab.Alloc()
	if err != nil || n != idx[1] || f.Gen == gen || f.Sock != [2]int{-1, -1} {
		t.Fatalf("reuse: %d %v %+v", n, err, f)
	}
	if tab.Len() != 3 {
		t.Fatalf("len %d", tab.Len())
	}
	count := 0
	tab.Each(func(int32, *Flow) { count++ })
	if count != 3 {
		t.Fatalf("Each saw %d", count)
	}
}

func TestInsertConflict(t *testing.T) {
	tab := NewTable(10)
	a, fa, _ := tab.Alloc()
	b, fb, _ := tab.Alloc()
	s := Side{EAddr: netip.MustParseAddr("2001:db8::2"), EPort: 1, FAddr: netip.MustParseAddr("2001:db8::1"), FPort: 2}
	fa.Side[Ini], fb.Side[Ini] = s, s
	fa.PIF[Ini], fb.PIF[Ini] = PIFTap, PIFTap
	if err := tab.Insert(Ref{a, Ini}); err != nil {
		t.Fatal(err)
	}
	if err := tab.Insert(Ref{b, Ini}); err == nil {
		t.Fatal("duplicate key accepted")
	}
}

func TestLookupAllocs(t *testing.T) {
	tab := NewTable(10)
	k := Key{PIF: PIFTap, EAddr: netip.MustParseAddr("2001:db8::2"), EPort: 1, FAddr: netip.MustParseAddr("2001:db8::1"), FPort: 2}
	if a := testing.AllocsPerRun(100, func() { tab.Lookup(k) }); a != 0 {
		t.Fatalf("%v allocs", a)
	}
}
