package ctl

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// ErrNoExtension says that the server closed the connection instead of
// answering an extension request: it speaks pesto only (upstream passt).
var ErrNoExtension = errors.New("the server does not speak gopasst's extension (upstream passt or pasta?)")

// Client is a connection to a control socket, after its greeting: the
// tables are what the server has.
type Client struct {
	c      net.Conn
	r      *bufio.Reader
	Hello  Hello
	Tables []Table
}

// Dial connects to the control socket at path and reads the greeting
// and the tables, within timeout.
func Dial(path string, timeout time.Duration) (*Client, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	cl := &Client{c: c, r: bufio.NewReader(c)}
	if cl.Hello, err = ReadHello(cl.r); err == nil {
		cl.Tables, err = ReadTables(cl.r)
	}
	if err != nil {
		c.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
			return nil, fmt.Errorf("%s closed the connection before its greeting (another user's?)", path)
		}
		return nil, err
	}
	return cl, nil
}

// Close closes the connection.
func (cl *Client) Close() error { return cl.c.Close() }

// Table returns the table named name, or nil.
func (cl *Client) Table(name string) *Table {
	for i := range cl.Tables {
		if cl.Tables[i].Name == name {
			return &cl.Tables[i]
		}
	}
	return nil
}

// Do sends an extension request and returns the server's text, or its
// one-line reason as the error.
func (cl *Client) Do(op Op, arg string) (string, error) {
	b, err := AppendRequest(nil, Request{Version: ExtVersion, Op: op, Arg: arg})
	if err != nil {
		return "", err
	}
	if _, err := cl.c.Write(b); err != nil {
		return "", err
	}
	return cl.readReply()
}

func (cl *Client) readReply() (string, error) {
	p, err := ReadReply(cl.r)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		// Upstream closes a connection it does not understand; with
		// our request unread, the kernel reports a reset.
		return "", ErrNoExtension
	case err != nil:
		return "", err
	case !p.OK:
		return "", errors.New(p.Text)
	}
	return p.Text, nil
}

// Update sends new contents for tables, as pesto does, and then asks for
// the outcome. Against a server without the extension, which closes the
// connection instead, it returns ErrNoExtension: the update was sent, its
// outcome is unknown.
func (cl *Client) Update(us []Update) error {
	b, err := AppendUpdate(nil, us)
	if err != nil {
		return err
	}
	if b, err = AppendRequest(b, Request{Version: ExtVersion, Op: OpStatus}); err != nil {
		return err
	}
	if _, err := cl.c.Write(b); err != nil {
		return err
	}
	_, err = cl.readReply()
	return err
}
