package returnpath_test

import (
	"fmt"

	"github.com/blaster-mail/blaster/returnpath"
)

func ExampleSigner() {
	s, err := returnpath.NewSigner([]byte("0123456789abcdef0123456789abcdef")) // from returnpath.LoadKey
	if err != nil {
		panic(err)
	}
	// The envelope sender of campaign 42's message to contact 7.
	addr, _ := s.Address("bounces@bounce.example.test", 42, 7)
	fmt.Println(addr)
	// A bounce sent to it names them; mail systems may change the case.
	tag, err := s.Verify("BOUNCES+42-7-" + addr[len("bounces+42-7-"):])
	fmt.Println(tag.CampaignID, tag.ContactID, err)
	// Any change to the address is refused.
	_, err = s.Verify("bounces+42-8-" + addr[len("bounces+42-7-"):])
	fmt.Println(err != nil)
	// Output:
	// bounces+42-7-7ssngbs3iaio26tg@bounce.example.test
	// 42 7 <nil>
	// true
}
