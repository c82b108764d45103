-- One database per component (no service reads another's tables).
CREATE DATABASE registry;
CREATE DATABASE activities;
CREATE DATABASE analytics;
CREATE DATABASE gateway;
