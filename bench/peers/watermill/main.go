// Watermill peer of the eventbus benchmark matrix: publishes -count messages of -size bytes to
// one topic, then subscribes with a consumer group and acks until all are back. Prints one JSON
// object; the runner (bench/run.py) compares it with our publish and consume+ack rows.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

type result struct {
	Backend          string  `json:"backend"`
	Count            int     `json:"count"`
	Size             int     `json:"size"`
	PublishSeconds   float64 `json:"publish_s"`
	PublishPerSec    float64 `json:"publish_per_s"`
	SubscribeSeconds float64 `json:"subscribe_s"`
	SubscribeAckPerS float64 `json:"subscribe_ack_per_s"`
	Error            string  `json:"error,omitempty"`
}

func fail(r result, err error) {
	r.Error = err.Error()
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
	os.Exit(1)
}

func main() {
	backend := flag.String("backend", "redis", "redis or kafka")
	addr := flag.String("address", "127.0.0.1:6379", "redis host:port or kafka bootstrap servers")
	count := flag.Int("count", 10000, "messages")
	size := flag.Int("size", 64, "payload bytes")
	topic := flag.String("topic", fmt.Sprintf("watermill-bench-%d", time.Now().UnixNano()), "topic / stream")
	batch := flag.Int("batch", 100, "messages per Publish call")
	timeout := flag.Duration("timeout", 120*time.Second, "give up after")
	flag.Parse()

	r := result{Backend: *backend, Count: *count, Size: *size}
	logger := watermill.NopLogger{}
	var pub message.Publisher
	var sub message.Subscriber
	var err error
	switch *backend {
	case "redis":
		client := redis.NewClient(&redis.Options{Addr: *addr, PoolSize: 8})
		pub, err = redisstream.NewPublisher(redisstream.PublisherConfig{Client: client}, logger)
		if err != nil {
			fail(r, err)
		}
		sub, err = redisstream.NewSubscriber(redisstream.SubscriberConfig{
			Client: client, ConsumerGroup: "watermill-bench", Consumer: "c1",
		}, logger)
	case "kafka":
		brokers := strings.Split(*addr, ",")
		pubCfg := kafka.DefaultSaramaSyncPublisherConfig()
		pubCfg.Version = sarama.V3_6_0_0
		pub, err = kafka.NewPublisher(kafka.PublisherConfig{
			Brokers: brokers, Marshaler: kafka.DefaultMarshaler{}, OverwriteSaramaConfig: pubCfg,
		}, logger)
		if err != nil {
			fail(r, err)
		}
		subCfg := kafka.DefaultSaramaSubscriberConfig()
		subCfg.Version = sarama.V3_6_0_0
		subCfg.Consumer.Offsets.Initial = sarama.OffsetOldest
		sub, err = kafka.NewSubscriber(kafka.SubscriberConfig{
			Brokers: brokers, Unmarshaler: kafka.DefaultMarshaler{},
			OverwriteSaramaConfig: subCfg, ConsumerGroup: "watermill-bench",
		}, logger)
	default:
		err = fmt.Errorf("unknown backend %q", *backend)
	}
	if err != nil {
		fail(r, err)
	}

	payload := []byte(strings.Repeat("x", *size))
	start := time.Now()
	for sent := 0; sent < *count; {
		n := *batch
		if *count-sent < n {
			n = *count - sent
		}
		msgs := make([]*message.Message, n)
		for i := range msgs {
			msgs[i] = message.NewMessage(watermill.NewUUID(), payload)
		}
		if err := pub.Publish(*topic, msgs...); err != nil {
			fail(r, err)
		}
		sent += n
	}
	r.PublishSeconds = time.Since(start).Seconds()
	r.PublishPerSec = float64(*count) / r.PublishSeconds

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	start = time.Now()
	ch, err := sub.Subscribe(ctx, *topic)
	if err != nil {
		fail(r, err)
	}
	got := 0
	for got < *count {
		select {
		case msg, ok := <-ch:
			if !ok {
				fail(r, fmt.Errorf("subscription closed after %d of %d", got, *count))
			}
			msg.Ack()
			got++
		case <-ctx.Done():
			fail(r, fmt.Errorf("timed out after %d of %d messages", got, *count))
		}
	}
	r.SubscribeSeconds = time.Since(start).Seconds()
	r.SubscribeAckPerS = float64(*count) / r.SubscribeSeconds
	_ = sub.Close()
	_ = pub.Close()
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
