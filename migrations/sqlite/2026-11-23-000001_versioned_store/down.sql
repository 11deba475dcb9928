DROP TABLE write_lock;
DROP TABLE resources;
DROP TABLE resource_history;
