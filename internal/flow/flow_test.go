package flow

import (
	"net/netip"
	"testing"
)

var (
	guest4 = netip.MustParseAddr("192.0.2.2")
	gw4    = netip.MustParseAddr("192.0.2.1")
	host4  = netip.MustParseAddr("198.51.100.1")
)

// newFlow allocates and activates a flow of type typ from the guest.
func newFlow(t *testing.T, tab *Table, typ Type, ini Side) int32 {
	t.Helper()
	n, f, err := tab.Alloc()
	if err != nil {
		t.Fatal(err)
	}
	f.SetIni(typ, PIFTap, ini)
	f.SetTgt(PIFHost, Side{EAddr: host4, EPort: ini.FPort})
	if err := tab.Activate(n, Ini); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTableLifecycle(t *testing.T) {
	tab := NewTable(3)
	var idx []int32
	for i := 0; i < 3; i++ {
		idx = append(idx, newFlow(t, tab, TypeUDP, Side{EAddr: guest4, EPort: uint16(1000 + i), FAddr: gw4, FPort: 53}))
	}
	if _, _, err := tab.Alloc(); err != ErrFull {
		t.Fatalf("want ErrFull, got %v", err)
	}
	k := Key{Type: TypeUDP, PIF: PIFTap, EAddr: guest4, EPort: 1001, FAddr: gw4, FPort: 53}
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
	if err != nil || n != idx[1] || f.Gen == gen || f.Sock != [2]int{-1, -1} || f.State != StateNew {
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
	count = 0
	tab.EachOf(TypeUDP, func(int32, *Flow) { count++ })
	if count != 2 {
		t.Fatalf("EachOf saw %d active UDP flows, want 2 (one is new)", count)
	}
}

// TestHalfMadeInvisible checks that a flow is not found before it is
// active, and that the type is part of the key.
func TestHalfMadeInvisible(t *testing.T) {
	tab := NewTable(10)
	ini := Side{EAddr: guest4, EPort: 7, FAddr: gw4, FPort: 7}
	n, f, _ := tab.Alloc()
	f.SetIni(TypeICMP, PIFTap, ini)
	k := Key{Type: TypeICMP, PIF: PIFTap, EAddr: guest4, EPort: 7, FAddr: gw4, FPort: 7}
	if err := tab.Activate(n, Ini); err == nil {
		t.Fatal("activated without a target side")
	}
	if _, ok := tab.Lookup(k); ok {
		t.Fatal("half-made flow found")
	}
	f.SetTgt(PIFHost, Side{EAddr: host4})
	if err := tab.Activate(n, Ini); err != nil {
		t.Fatal(err)
	}
	if _, ok := tab.Lookup(k); !ok {
		t.Fatal("active flow not found")
	}
	// A UDP flow with the same addresses and ports is another flow.
	u := newFlow(t, tab, TypeUDP, ini)
	k.Type = TypeUDP
	if r, ok := tab.Lookup(k); !ok || r.Index != u {
		t.Fatalf("UDP lookup %v %v, want flow %d", r, ok, u)
	}
}

func TestActivateConflict(t *testing.T) {
	tab := NewTable(10)
	s := Side{EAddr: netip.MustParseAddr("2001:db8::2"), EPort: 1, FAddr: netip.MustParseAddr("2001:db8::1"), FPort: 2}
	newFlow(t, tab, TypeUDP, s)
	b, fb, _ := tab.Alloc()
	fb.SetIni(TypeUDP, PIFTap, s)
	fb.SetTgt(PIFHost, Side{})
	if err := tab.Activate(b, Ini); err == nil {
		t.Fatal("duplicate key accepted")
	}
	if fb.State == StateActive {
		t.Fatal("refused flow became active")
	}
}

func TestLookupAllocs(t *testing.T) {
	tab := NewTable(10)
	k := Key{PIF: PIFTap, EAddr: netip.MustParseAddr("2001:db8::2"), EPort: 1, FAddr: netip.MustParseAddr("2001:db8::1"), FPort: 2}
	if a := testing.AllocsPerRun(100, func() { tab.Lookup(k) }); a != 0 {
		t.Fatalf("%v allocs", a)
	}
}
