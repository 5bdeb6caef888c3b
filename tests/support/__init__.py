"""Test harness: real serf agents, redis-server, mosquitto and HTTP receivers on free ports."""
